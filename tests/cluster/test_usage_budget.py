"""Usage accounting and `spec.budget` end to end (issue [work], items 2 and 3).

The real operator with the Lease heartbeat on (period 1 s, as in test_operator_live.py), real sessions on
the node agent's `local` runtime with the real supervisor beside them. Each session writes
`$FLEET_STATE_DIR/usage.json` as a plain script would (printf, then mv).

- Over a quota requeue (a reset 3 s ahead), `status.attempts[].usage` holds each attempt's figures and
  `status.usage` their totals; the operator's metrics count them once, by kind, namespace and pool.
- A tokens budget spent by an attempt that ends in a quota stop (in a namespace without the heartbeat, so
  only its final report counts) fails the dispatch (`BudgetExceeded`) instead of requeueing: no second pod.
- examples/usage/plain-script.yaml runs as its comment says: its status shows the figures it wrote last.
- A running attempt whose heartbeat shows it past the tokens budget is stopped (its pod deleted) while its
  session would still run for minutes; so is one whose `totalSeconds` runs out.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleetdispatch.devcluster.stack import HEARTBEAT_ACCOUNT, BackgroundCluster, heartbeat_identity
from operators import Namespace, OperatorProcess
from waiting import eventually

PERIOD = 1
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "usage" / "plain-script.yaml"
FAST_RETRY = {"maxAttempts": 2, "backoff": {"baseSeconds": 1, "maxSeconds": 1, "jitterPercent": 0}}


@pytest.fixture(scope="module")
def operator_args() -> tuple[str, ...]:
    return (
        f"--heartbeat-service-account={HEARTBEAT_ACCOUNT}",
        f"--heartbeat-seconds={PERIOD}",
        "--live-status-interval-seconds=2",
    )


@pytest.fixture
def beating(cluster: BackgroundCluster, ns: Namespace) -> Namespace:
    """The test's namespace with the chart's heartbeat identity in it."""
    cluster.dev.plane.apply(heartbeat_identity(ns.name))
    return ns


def _write_usage(json_text: str) -> str:
    """Shell that replaces usage.json atomically, as the README shows."""
    return (
        f"printf '%s' '{json_text}' > \"$FLEET_STATE_DIR/.usage.json\" && "
        'mv "$FLEET_STATE_DIR/.usage.json" "$FLEET_STATE_DIR/usage.json"\n'
        # Not gone before the supervisor (a Python process starting beside it) reports on its TERM.
        "sleep 3\n"
    )


QUOTA_STOP = (
    'reset=$(date -u -d "@$(( $(date +%s) + 3 ))" +%Y-%m-%dT%H:%M:%SZ)\n'
    'printf \'{"reason":"QuotaExhausted","resetAt":"%s"}\' "$reset" > "$FLEET_STATE_DIR/outcome.json"\n'
    "exit 75\n"
)


def _session(script: str, **spec: Any) -> dict[str, Any]:
    container = {"name": "session", "image": "busybox", "command": ["sh", "-c", script]}
    return {
        "template": {"spec": {"containers": [container]}},
        "activity": {"pollSeconds": 1},
        "timeouts": {"deadlineSeconds": 300, "killGraceSeconds": 1},
        "retry": FAST_RETRY,
        **spec,
    }


def _metric(operator: OperatorProcess, name: str, **labels: str) -> float:
    code, text = operator.get("/metrics")
    assert code == 200
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{"):
            series, _, value = line.rpartition(" ")
            found = ",".join(sorted(series[len(name) + 1 : -1].split(",")))
            if found == wanted:
                return float(value)
    return 0.0


def test_usage_over_two_attempts_is_recorded_and_added_up(
    beating: Namespace, operator: OperatorProcess
) -> None:
    ns = beating
    script = (
        'if [ "$FLEET_RESUME" = 1 ]; then\n'
        + _write_usage('{"inputTokens":30,"outputTokens":5,"cost":"0.02","model":"example-model"}')
        + "exit 0\nfi\n"
        + _write_usage('{"inputTokens":100,"outputTokens":20,"cacheReadTokens":7,"cost":"0.05"}')
        + QUOTA_STOP
    )
    ns.create("spend", _session(script))
    status = ns.wait_phase("spend", "Succeeded", 60)
    first, second = status["attempts"]
    assert first["outcome"] == "QuotaExhausted" and second["outcome"] == "Completed"
    assert first["usage"] == {
        "inputTokens": 100,
        "outputTokens": 20,
        "cacheReadTokens": 7,
        "cost": "0.05",
        "currency": "USD",
    }
    assert second["usage"] == {
        "inputTokens": 30,
        "outputTokens": 5,
        "cost": "0.02",
        "currency": "USD",
        "model": "example-model",
    }
    assert status["usage"] == {
        "inputTokens": 130,
        "outputTokens": 25,
        "cacheReadTokens": 7,
        "cost": "0.07",
        "currency": "USD",
        "model": "example-model",
    }
    labels = {"namespace": ns.name, "pool": "None"}
    eventually(
        lambda: _metric(operator, "fleetdispatch_tokens_total", kind="input", **labels) == 130,
        10,
        "the input tokens counted once per attempt",
    )
    assert _metric(operator, "fleetdispatch_tokens_total", kind="cacheRead", **labels) == 7
    assert _metric(operator, "fleetdispatch_cost_total", currency="USD", **labels) == pytest.approx(0.07)


def test_a_spent_tokens_budget_fails_instead_of_requeueing(ns: Namespace) -> None:
    # No heartbeat in this namespace: the attempt runs to its quota stop, and its final report spends the
    # budget (with the heartbeat on, it would have been stopped while it ran: the next test).
    script = _write_usage('{"inputTokens":80,"outputTokens":40}') + QUOTA_STOP
    ns.create("capped", _session(script, budget={"tokens": 100}))
    status = ns.wait_phase("capped", "Failed", 60)
    assert status["reason"] == "BudgetExceeded"
    assert "budget.tokens is spent: 120 tokens used, of 100" in status["message"]
    assert status["usage"]["inputTokens"] == 80
    assert status["attempts"][-1]["outcome"] == "QuotaExhausted" and "requeueAt" not in status
    time.sleep(4)  # past the reset the requeue would have waited for
    assert [p["metadata"]["name"] for p in ns.pods()] == ["capped-1"]
    assert any(reason == "BudgetExceeded" and "budget.tokens" in message for reason, message in ns.events())


def test_a_running_attempt_past_its_tokens_budget_is_stopped(beating: Namespace) -> None:
    ns = beating
    script = _write_usage('{"inputTokens":500}') + "sleep 300\n"
    ns.create("runaway", _session(script, budget={"tokens": 100, "totalSeconds": 600}))
    ns.wait_phase("runaway", "Running", 30)
    began = time.monotonic()
    status = ns.wait_phase("runaway", "Failed", 30)
    took = time.monotonic() - began
    assert status["reason"] == "BudgetExceeded", status
    assert "budget.tokens is spent: 500 tokens used, of 100" in status["message"]
    assert status["attempts"][-1]["usage"] == {"inputTokens": 500}
    assert took < 15, f"stopped only after {took:.1f} s"

    def gone() -> bool:
        return all(
            p["metadata"].get("deletionTimestamp") or p["status"].get("phase") in ("Succeeded", "Failed")
            for p in ns.pods()
        )

    eventually(gone, 30, "the pod deleted")


def test_a_running_attempt_is_stopped_when_total_seconds_run_out(beating: Namespace) -> None:
    ns = beating
    ns.create("timeboxed", _session("sleep 300\n", budget={"totalSeconds": 4}))
    running = ns.wait_phase("timeboxed", "Running", 30)
    assert running.get("startTime")
    status = ns.wait_phase("timeboxed", "Failed", 30)
    assert status["reason"] == "BudgetExceeded"
    assert "budget.totalSeconds is spent: 4 s since the first start" in status["message"]
    assert len(ns.pods()) == 1


def test_the_plain_script_example_reports_its_usage(beating: Namespace) -> None:
    ns = beating
    example = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    name = example["metadata"]["name"]
    ns.create(name, example["spec"])
    status = ns.wait_phase(name, "Succeeded", 60)
    figures = {
        "inputTokens": 3000,
        "outputTokens": 1500,
        "cost": "0.03",
        "currency": "USD",
        "model": "example-model",
    }
    assert status["usage"] == figures
    assert status["attempts"][-1]["usage"] == figures
