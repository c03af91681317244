"""Clean-up and retry in place on the dev cluster: the real operator (with the chart's RBAC), real sessions.

- `spec.ttlSecondsAfterFinished` deletes a finished dispatch, and the garbage collector its pod; a
  dispatch without it stays.
- The pods of earlier attempts are deleted once their ends are recorded and the next attempt runs; the last
  attempt's pod stays.
- `kubectl fleet retry` (the real kubectl running the installed plugin) starts a Failed dispatch's new line
  of attempts; the same annotation value again, even across an operator restart, retries nothing more; the
  plugin refuses a dispatch that is not Failed; a value set by hand on one is recorded and ignored.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fleetdispatch.api.names import API_VERSION, GROUP, RETRY_ANNOTATION, VERSION
from fleetdispatch.devcluster.stack import BackgroundCluster
from fleetdispatch.session.protocol import parse_time
from kube import ApiError
from kubectl import Kubectl, needs_kubectl
from operators import Namespace, OperatorProcess
from waiting import eventually

pytestmark = needs_kubectl

# Where pip put this interpreter's scripts, `kubectl-fleet` among them.
SCRIPTS = Path(sys.executable).parent
FAST = {"baseSeconds": 1, "maxSeconds": 1, "jitterPercent": 0}


def _session(script: str, max_attempts: int = 1, **spec: Any) -> dict[str, Any]:
    container = {"name": "session", "image": "busybox", "command": ["sh", "-c", script]}
    return {
        "template": {"spec": {"containers": [container]}},
        "activity": {"pollSeconds": 1},
        "retry": {"maxAttempts": max_attempts, "backoff": FAST},
        **spec,
    }


def _pod_names(ns: Namespace) -> list[str]:
    return [p["metadata"]["name"] for p in ns.pods()]


def _exists(ns: Namespace, name: str) -> bool:
    try:
        ns.dispatch(name)
    except ApiError as error:
        if error.status == 404:
            return False
        raise
    return True


def _reasons(ns: Namespace, reason: str) -> list[str]:
    return [message for r, message in ns.events() if r == reason]


@pytest.fixture
def fleet(cluster: BackgroundCluster, ns: Namespace, tmp_path: Path) -> Kubectl:
    kubectl = Kubectl(cluster.write_kubeconfig(tmp_path / "kubeconfig", ns.name))
    kubectl.env["PATH"] = f"{SCRIPTS}{os.pathsep}{kubectl.env.get('PATH', '')}"
    return kubectl


def test_a_finished_dispatch_and_its_pod_go_its_ttl_after_it_finished(ns: Namespace) -> None:
    ns.create("brief", _session("echo done", ttlSecondsAfterFinished=2))
    ns.create("kept", _session("echo done"))
    status = ns.wait_phase("brief", "Succeeded", 30)
    finished = parse_time(status["completionTime"])
    assert finished is not None
    eventually(lambda: not _exists(ns, "brief"), 30, "brief deleted", interval=0.1)
    deleted_after = time.time() - finished.timestamp()
    print(f"\nttlSecondsAfterFinished 2: deleted {deleted_after:.2f} s after its completionTime")
    # completionTime is to the second (rounded down): the ttl counts from it, never from earlier.
    assert 2 <= deleted_after <= 12, deleted_after
    eventually(lambda: "brief-1" not in _pod_names(ns), 30, "brief's pod garbage-collected", interval=0.1)
    ns.wait_phase("kept", "Succeeded", 30)
    time.sleep(1)
    assert _exists(ns, "kept") and "kept-1" in _pod_names(ns)  # no ttl: kept, with its pod


def test_the_earlier_attempts_pods_go_and_the_last_stays(ns: Namespace) -> None:
    script = 'echo "attempt $FLEET_ATTEMPT"; [ "$FLEET_ATTEMPT" -ge 3 ]'
    ns.create("thrice", _session(script, max_attempts=3))
    status = ns.wait_phase("thrice", "Succeeded", 60)
    assert [a["outcome"] for a in status["attempts"]] == ["Failed", "Failed", "Completed"]
    eventually(lambda: _pod_names(ns) == ["thrice-3"], 30, "only the last attempt's pod", interval=0.1)
    assert ns.logs("thrice-3") == "attempt 3\n"  # its logs, for `kubectl logs`


def test_kubectl_fleet_retry_starts_a_new_line_of_attempts_once_per_value(
    ns: Namespace, fleet: Kubectl, operator: OperatorProcess
) -> None:
    script = 'echo "attempt $FLEET_ATTEMPT"; [ "$FLEET_ATTEMPT" -ge 3 ]'
    ns.create("again", _session(script))
    first = ns.wait_phase("again", "Failed", 30)
    assert (first["attempt"], first["reason"]) == (1, "BackoffLimitExceeded")

    asked = time.monotonic()
    done = fleet.run("fleet", "retry", "again", "-n", ns.name).stdout
    value = ns.dispatch("again")["metadata"]["annotations"][RETRY_ANNOTATION]
    assert parse_time(value) is not None
    assert done == (
        f"fleetdispatch.fleet.dispatch.dev/again retried ({RETRY_ANNOTATION}={value}): "
        "attempt 2 starts a new line of attempts\n"
    )
    eventually(lambda: ns.status("again").get("attempt") == 2, 30, "attempt 2", interval=0.1)
    print(f"\nkubectl fleet retry: attempt 2 named in the status {time.monotonic() - asked:.2f} s after")
    second = ns.wait_phase("again", "Failed", 30)
    assert (second["failures"], second["retryHandled"]) == (1, value)  # counted afresh, the value recorded
    assert [(a["attempt"], a["outcome"]) for a in second["attempts"]] == [(1, "Failed"), (2, "Failed")]
    assert len(_reasons(ns, "Retried")) == 1
    eventually(lambda: _pod_names(ns) == ["again-2"], 30, "attempt 1's pod deleted", interval=0.1)

    # The same value again (with another change, so that the object does change), then a restart.
    path = f"{ns.path}/again"
    ns.kube.patch(path, {"metadata": {"annotations": {RETRY_ANNOTATION: value, "touched": "yes"}}})
    operator.kill()
    operator.start()
    eventually(operator.watching, 30, "the restarted operator watching", interval=0.1)
    time.sleep(3)
    stored = ns.status("again")
    assert (stored["phase"], stored["attempt"]) == ("Failed", 2), stored
    assert len(_reasons(ns, "Retried")) == 1

    fleet.run("fleet", "retry", "again", "-n", ns.name)
    third = ns.wait_phase("again", "Succeeded", 30)
    assert third["attempt"] == 3 and len(_reasons(ns, "Retried")) == 2
    assert ns.logs("again-3") == "attempt 3\n"
    eventually(lambda: _pod_names(ns) == ["again-3"], 30, "only the last attempt's pod", interval=0.1)

    refused = fleet.run("fleet", "retry", "again", "-n", ns.name, check=False)
    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr == (
        'error: fleetdispatch "again" is Succeeded, not Failed: only a Failed dispatch can be retried\n'
    )

    # Set by hand on a dispatch that is not Failed: recorded, ignored, and said so.
    ns.kube.patch(path, {"metadata": {"annotations": {RETRY_ANNOTATION: "by-hand"}}})
    eventually(lambda: ns.status("again").get("retryHandled") == "by-hand", 30, "recorded", interval=0.1)
    assert _reasons(ns, "RetryIgnored") == [
        f"{RETRY_ANNOTATION}=by-hand ignored: it is Succeeded, not Failed; only a Failed dispatch is retried"
    ]
    assert ns.status("again")["phase"] == "Succeeded"


def test_kubectl_fleet_retry_of_a_dispatch_that_does_not_exist(ns: Namespace, fleet: Kubectl) -> None:
    missing = fleet.run("fleet", "retry", "nope", check=False)
    assert missing.returncode == 1
    assert missing.stderr == (
        f'Error from server (NotFound): fleetdispatch "nope" not found in namespace "{ns.name}"\n'
    )


def test_the_api_server_refuses_a_ttl_in_a_campaigns_template(ns: Namespace) -> None:
    body = {
        "apiVersion": API_VERSION,
        "kind": "FleetCampaign",
        "metadata": {"name": "many"},
        "spec": {
            "template": {"spec": _session("true", ttlSecondsAfterFinished=60)},
            "items": [{"name": "a"}],
        },
    }
    with pytest.raises(ApiError) as refused:
        ns.kube.create(f"/apis/{GROUP}/{VERSION}/namespaces/{ns.name}/fleetcampaigns", body)
    assert refused.value.status == 422
    assert (
        "spec.template.spec.ttlSecondsAfterFinished: Forbidden: not in a campaign: the campaign counts its "
        "dispatches and would create a deleted one again; deleting the campaign deletes them"
    ) in refused.value.message
