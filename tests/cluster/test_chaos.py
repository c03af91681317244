"""A small seeded run of the chaos bench (bench/chaos.py) in the suite: 30 dispatches (quick successes,
retried logic failures, quota requeues) on a control plane of its own, the operator SIGKILLed three times
(one right after a pod create) and restarted, through the TCP fault proxy (latency, cut connections).

Asserts the bench's zero figures: nothing lost, no duplicate pod, no attempt past the limits, no pod created
after a terminal status, every final phase and counter as the dispatch's scripted outcomes imply. The bench
is loaded from its file (bench/ is not a package); nothing of it is replaced.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _chaos() -> ModuleType:
    spec = importlib.util.spec_from_file_location("chaos_bench", BENCH / "chaos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_kills_and_cut_connections_lose_nothing_and_run_nothing_twice(tmp_path: Path) -> None:
    chaos = _chaos()
    figures, rates = chaos.run(tmp_path, count=30, kills=3, seed=7, limit=45, proxy=True)
    assert rates["kills"] == 3
    assert rates["proxy cuts"] > 0
    assert figures.lost == []
    assert figures.duplicate == []
    assert figures.beyond == []
    assert figures.after_terminal == []
    assert figures.wrong == []
    # 30 dispatches: 10 successes (1 pod), 10 logic failures and 10 quota stops (3 pods each)
    assert rates["pods"] == 70
