"""The operator end to end: the real `fleetdispatch operator` process, the real kube-apiserver, and real
session processes with the real supervisor beside them (the node agent runs pods in namespaces).

Sessions are tiny shell scripts that read the session protocol (env, `$FLEET_STATE_DIR`) the way a real
session would; timeouts are a few seconds, so each scenario takes seconds. The restart scenarios, which
need pods in exact states, are in test_operator_restarts.py.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from fleetdispatch.devcluster.stack import BackgroundCluster
from kubectl import Kubectl, needs_kubectl
from operators import Namespace
from waiting import eventually

FAST_RETRY = {"maxAttempts": 2, "backoff": {"baseSeconds": 1, "maxSeconds": 1, "jitterPercent": 0}}


def _session(script: str, **spec: Any) -> dict[str, Any]:
    container = {"name": "session", "image": "busybox", "command": ["sh", "-c", script]}
    return {
        "template": {"spec": {"containers": [container]}},
        "activity": {"pollSeconds": 1},
        "retry": FAST_RETRY,
        **spec,
    }


def _env(ns: Namespace, pod: str) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in ns.pod(pod)["spec"]["containers"][0]["env"]}


def test_a_session_that_completes_succeeds(ns: Namespace) -> None:
    ns.create("hello", _session('echo "hello from $FLEET_DISPATCH attempt $FLEET_ATTEMPT"'))
    status = ns.wait_phase("hello", "Succeeded")
    assert status["attempt"] == 1
    assert status["attempts"][0]["outcome"] == "Completed"
    ready = ns.condition("hello", "Ready")
    assert ready is not None and ready["status"] == "True"
    reconciling = ns.condition("hello", "Reconciling")
    assert reconciling is not None and reconciling["status"] == "False"
    pod = ns.pod("hello-1")
    assert pod["spec"]["initContainers"][0]["name"] == "fleet-supervisor"
    log = ns.logs("hello-1")
    assert f"hello from {ns.name}/hello attempt 1" in log


def test_a_logic_failure_is_retried_then_failed(ns: Namespace) -> None:
    ns.create("broken", _session("echo 'cannot find the recipe' >&2; exit 3"))
    status = ns.wait_phase("broken", "Failed")
    assert status["reason"] == "BackoffLimitExceeded"
    assert status["failures"] == 2
    assert [(a["exitCode"], a["failureClass"]) for a in status["attempts"]] == [(3, "Logic"), (3, "Logic")]
    stalled = ns.condition("broken", "Stalled")
    assert stalled is not None and stalled["status"] == "True"
    # The Event follows the status write that it explains.
    eventually(lambda: "BackoffLimitExceeded" in [reason for reason, _ in ns.events()], 5, "the last Event")
    # An attempt seen running has a Started Event; one over before the operator saw it run has none.
    reasons = [reason for reason, _ in ns.events() if reason != "Started"]
    assert reasons == ["BackOff", "BackoffLimitExceeded"]


def test_a_timed_out_session_is_resumed_with_its_token_up_to_max_resumes(ns: Namespace) -> None:
    # Silent and idle: the supervisor stops it at its 2 s deadline (no extension).
    script = 'echo "session-$FLEET_ATTEMPT" > "$FLEET_STATE_DIR/resume-token"; exec sleep 600'
    timeouts = {"deadlineSeconds": 2, "maxExtensionSeconds": 0, "idleOutputSeconds": 0, "killGraceSeconds": 1}
    ns.create("slow", _session(script, timeouts=timeouts, retry={**FAST_RETRY, "maxResumes": 1}))
    ns.wait_phase("slow", "Running")
    first = _env(ns, "slow-1")  # now: an earlier attempt's pod is deleted once its end is recorded
    status = ns.wait_phase("slow", "Failed", 30)
    assert status["reason"] == "ResumeLimitExceeded"
    assert [a["outcome"] for a in status["attempts"]] == ["DeadlineExceeded", "DeadlineExceeded"]
    assert status["failures"] == 0 and status["resumes"] == 1
    second = _env(ns, "slow-2")
    assert "FLEET_RESUME" not in first
    assert second["FLEET_RESUME"] == "1" and second["FLEET_RESUME_TOKEN"] == "session-1"


def test_a_pod_deleted_by_someone_is_retried_without_spending_attempts(ns: Namespace) -> None:
    script = 'if [ "$FLEET_ATTEMPT" = 1 ]; then exec sleep 600; fi; echo "resumed: $FLEET_RESUME"'
    ns.create("victim", _session(script, retry={**FAST_RETRY, "maxAttempts": 1}))
    ns.wait_phase("victim", "Running")
    ns.delete_pod("victim-1")
    status = ns.wait_phase("victim", "Succeeded", 20)
    assert status["failures"] == 0
    assert status["attempts"][0]["outcome"] == "PodDeleted"
    assert status["attempts"][0]["failureClass"] == "Infrastructure"
    assert _env(ns, "victim-2")["FLEET_RESUME"] == "1"


def test_suspend_stops_the_attempt_and_unsuspend_resumes_it(ns: Namespace) -> None:
    script = 'if [ "$FLEET_RESUME" = 1 ]; then echo resumed; exit 0; fi; exec sleep 600'
    ns.create("paused", _session(script))
    ns.wait_phase("paused", "Running")
    ns.patch_spec("paused", {"suspend": True})
    ns.wait_phase("paused", "Suspended")
    names = lambda: [p["metadata"]["name"] for p in ns.pods()]  # noqa: E731
    eventually(lambda: "paused-1" not in names(), 10, "the suspended attempt's pod deleted")
    suspended = ns.condition("paused", "Suspended")
    assert suspended is not None and suspended["status"] == "True"
    ns.patch_spec("paused", {"suspend": False})
    status = ns.wait_phase("paused", "Succeeded", 20)
    assert [a["outcome"] for a in status["attempts"]] == ["Suspended", "Completed"]
    assert status["failures"] == 0


@needs_kubectl
def test_kubectl_waits_for_ready_and_lists_dispatches(
    cluster: BackgroundCluster, ns: Namespace, tmp_path: Any
) -> None:
    kubectl = Kubectl(cluster.write_kubeconfig(tmp_path / "kubeconfig", namespace=ns.name))
    manifest = {
        "apiVersion": "fleet.dispatch.dev/v1alpha1",
        "kind": "FleetDispatch",
        "metadata": {"name": "waited"},
        "spec": _session("sleep 1; echo done"),
    }
    kubectl.run("apply", "-f", "-", stdin=json.dumps(manifest))
    kubectl.run("wait", "--for=condition=Ready", "fd/waited", "--timeout=30s")
    table = kubectl.run("get", "fd", "-o", "wide").stdout.splitlines()
    assert table[0].split()[:5] == ["NAME", "PHASE", "ATTEMPT", "DEADLINE", "REQUEUE-AT"]
    row = table[1].split()
    assert row[:3] == ["waited", "Succeeded", "1"]
    assert "True" in row and "Completed" in row and "waited-1" in row
    described = kubectl.run("describe", "fd", "waited").stdout
    assert "attempt 1 running in pod waited-1, created 20" in described  # its Started Event
    assert "attempt 1 completed" in described


def test_a_busy_session_outlives_its_budget_and_the_status_shows_the_extended_deadline(ns: Namespace) -> None:
    # Busy for 4 s on a 1 s budget: the supervisor extends the deadline each poll, up to the 10 s cap.
    script = 'end=$(( $(date +%s) + 4 )); while [ "$(date +%s)" -lt "$end" ]; do :; done; echo done'
    timeouts = {
        "deadlineSeconds": 1,
        "maxExtensionSeconds": 10,
        "idleOutputSeconds": 0,
        "killGraceSeconds": 1,
    }
    ns.create("busy", _session(script, timeouts=timeouts))
    status = ns.wait_phase("busy", "Succeeded", 30)
    started = datetime.fromisoformat(status["startTime"])
    deadline = datetime.fromisoformat(status["deadline"])
    assert deadline - started > timedelta(seconds=2), status  # extended past the 1 s budget
    assert status["activityReason"] in ("cpu", "output")  # the loop forks `date`, whose writes are output
    assert datetime.fromisoformat(status["deadlineCap"]) - started <= timedelta(seconds=12)


def test_a_session_out_of_quota_waits_requeued_and_resumes_after_the_reset(ns: Namespace) -> None:
    script = (
        'if [ "$FLEET_RESUME" = 1 ]; then echo "resumed $FLEET_RESUME_TOKEN"; exit 0; fi; '
        'reset=$(date -u -d "@$(( $(date +%s) + 2 ))" +%Y-%m-%dT%H:%M:%SZ); '
        'printf \'{"reason":"QuotaExhausted","resetAt":"%s","resumeToken":"agent-7"}\' "$reset" '
        '> "$FLEET_STATE_DIR/outcome.json"; exit 75'
    )
    ns.create("limited", _session(script, retry={**FAST_RETRY, "maxAttempts": 1}))
    requeued = ns.wait_phase("limited", "Requeued")
    assert requeued["reason"] == "QuotaExhausted" and requeued["failureClass"] == "Quota"
    status = ns.wait_phase("limited", "Succeeded", 20)
    assert (status["requeues"], status["failures"]) == (1, 0)
    env = _env(ns, "limited-2")
    assert env["FLEET_RESUME"] == "1" and env["FLEET_RESUME_TOKEN"] == "agent-7"
