"""The extensions the supervisor reports in its termination message (what `fleetdispatch_deadline_
extensions_total` counts): one per `extended` line of its log, and the seconds the deadline moved, on each
way it ends (the session exits, a stop at the cap, the kubelet's TERM). Injected clocks, a scripted probe."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fleetdispatch.session import protocol
from fleetdispatch.session.config import SupervisorConfig
from supervision import WALL_START, Clock, ScriptedProbe, scripted_supervisor


def _config(tmp_path: Path, report: Path) -> SupervisorConfig:
    return SupervisorConfig(
        deadline_seconds=10,
        max_extension_seconds=20,
        idle_output_seconds=0,
        kill_grace_seconds=3,
        poll_seconds=1,
        state_dir=str(tmp_path),
        dispatch="ns/d",
        attempt="1",
        report_file=str(report),
    )


@pytest.mark.parametrize("ending", ["exits", "cap", "terminated"])
def test_the_report_counts_each_extension_and_its_seconds(tmp_path: Path, ending: str) -> None:
    clock = Clock()
    probe = ScriptedProbe(clock, cpu_share=1.0)  # always busy: extended at every poll
    report = tmp_path / "termination-log"
    events: list[dict[str, Any]] = []
    loop = scripted_supervisor(_config(tmp_path, report), clock, probe, events=events)
    if ending == "exits":
        clock.on_sleep.append(lambda: setattr(probe, "alive", clock.now < 115))
    elif ending == "terminated":
        clock.on_sleep.append(lambda: loop.terminate() if clock.now >= 112 else None)
    assert loop.run() == 0
    extended = [e for e in events if e["event"] == "extended"]
    assert len(extended) >= 3
    figures = json.loads(report.read_text())
    assert figures[protocol.REPORT_EXTENSIONS] == len(extended)
    count, seconds = protocol.read_report_extensions(figures)
    assert count == len(extended)
    # The deadline moved from the initial budget to the last one reported, by exactly these seconds.
    final = protocol.parse_time(figures["deadline"])
    assert final is not None
    assert seconds == pytest.approx(final.timestamp() - (WALL_START + 10), abs=1.0)
    if ending == "cap":
        assert figures["deadline"] == protocol.format_time(WALL_START + 30) and seconds == 20.0


def test_no_extension_is_reported_as_none(tmp_path: Path) -> None:
    clock = Clock()
    report = tmp_path / "termination-log"
    assert scripted_supervisor(_config(tmp_path, report), clock, ScriptedProbe(clock)).run() == 0
    assert protocol.read_report_extensions(json.loads(report.read_text())) == (0, 0.0)
