"""Live status and the lost-supervisor signal end to end (issue [live], items 1 and 2).

The real operator with the Lease heartbeat on (as the chart installs it: `--heartbeat-service-account`, the
chart's `templates/heartbeat.yaml` identity in the test's namespace), real sessions on the node agent's
`local` runtime with the real supervisor beside them, renewing its Lease through the real API server. The
heartbeat period is 1 s, the live status interval 2 s and the clock tolerance 1 s here (the node and the
operator share one clock), so each scenario takes seconds; the defaults (15 s, 15 s, 5 s) only scale the
times.

- A busy session whose deadline the supervisor extends shows the new `status.deadline` (and `kubectl get
  fd`'s DEADLINE) and `lastActivityTime` while it still runs, and the operator's live writes keep to the
  interval (counted in the audit log).
- A supervisor killed (SIGKILL, found among this test process's descendants by its command line) while
  its session runs ends the attempt as `SupervisorLost` within three periods plus the clock tolerance.
- Forged Leases (the wrong name, no owner, the wrong attempt) change nothing.
- A namespace without the heartbeat's account behaves as before: the pod runs without the heartbeat, and
  the status keeps the initial deadline until the supervisor's final report. (The setting off: its own
  module, test_operator_live_off.py, for an operator started without it.)
"""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest

from fleetdispatch.api.names import ATTEMPT_LABEL, DISPATCH_LABEL
from fleetdispatch.core import live
from fleetdispatch.devcluster.stack import (
    HEARTBEAT_ACCOUNT,
    OPERATOR_USER,
    AuditWatch,
    BackgroundCluster,
    audit_events,
    heartbeat_identity,
)
from fleetdispatch.session import protocol
from kubectl import Kubectl, needs_kubectl
from operators import Namespace
from waiting import eventually

PERIOD = 1
INTERVAL = 2
TOLERANCE = 1
LOST_WITHIN = live.LOST_PERIODS * PERIOD + TOLERANCE
FAST_RETRY = {"maxAttempts": 2, "backoff": {"baseSeconds": 1, "maxSeconds": 1, "jitterPercent": 0}}
LEASES = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"


@pytest.fixture(scope="module")
def operator_args() -> tuple[str, ...]:
    return (
        f"--heartbeat-service-account={HEARTBEAT_ACCOUNT}",
        f"--heartbeat-seconds={PERIOD}",
        f"--live-status-interval-seconds={INTERVAL}",
        f"--clock-tolerance-seconds={TOLERANCE}",
    )


@pytest.fixture
def beating(cluster: BackgroundCluster, ns: Namespace) -> Namespace:
    """The test's namespace with the chart's heartbeat identity in it."""
    cluster.dev.plane.apply(heartbeat_identity(ns.name))
    return ns


def _session(script: str, **spec: Any) -> dict[str, Any]:
    container = {"name": "session", "image": "busybox", "command": ["sh", "-c", script]}
    return {
        "template": {"spec": {"containers": [container]}},
        "activity": {"pollSeconds": 1},
        "retry": FAST_RETRY,
        **spec,
    }


def _time(value: str) -> datetime:
    parsed = protocol.parse_time(value)
    assert parsed is not None, value
    return parsed


def _busy(seconds: int) -> str:
    return f'end=$(( $(date +%s) + {seconds} )); while [ "$(date +%s)" -lt "$end" ]; do :; done; echo done'


@needs_kubectl
def test_a_busy_session_shows_its_extended_deadline_while_it_runs(
    cluster: BackgroundCluster, beating: Namespace, tmp_path: Path
) -> None:
    ns = beating
    timeouts = {
        "deadlineSeconds": 3,
        "maxExtensionSeconds": 120,
        "idleOutputSeconds": 0,
        "killGraceSeconds": 1,
    }
    ns.create("busy", _session(_busy(15), timeouts=timeouts))
    running = ns.wait_phase("busy", "Running", 30)
    assert ns.pod("busy-1")["spec"]["serviceAccountName"] == HEARTBEAT_ACCOUNT
    assert "leases" in AuditWatch(cluster.dev.audit_log, OPERATOR_USER).open_watches()
    initial = _time(running["deadline"])
    started = time.monotonic()

    def extended() -> dict[str, Any] | None:
        status = ns.status("busy")
        moved = status.get("deadline") and _time(status["deadline"]) > initial + timedelta(seconds=2)
        return status if moved and status.get("lastActivityTime") and status["phase"] == "Running" else None

    status = eventually(extended, 20, "the extended deadline and the last activity while the session runs")
    assert status["activityReason"] in ("cpu", "output")
    # It still runs: the pod, too.
    assert ns.pod("busy-1")["status"]["phase"] == "Running"
    # `kubectl get fd` shows the live deadline, the status's.
    kubectl = Kubectl(cluster.write_kubeconfig(tmp_path / "kubeconfig", namespace=ns.name))
    row = kubectl.run("get", "fd", "busy", "--no-headers").stdout.split()
    assert row[:2] == ["busy", "Running"]
    shown = _time(row[3])
    assert shown > initial + timedelta(seconds=2), row

    # It keeps following: a later look shows a later deadline and activity, still while it runs.
    def moved_on() -> dict[str, Any] | None:
        later = ns.status("busy")
        newer = later.get("lastActivityTime") and later["lastActivityTime"] > status["lastActivityTime"]
        return later if newer and later["phase"] == "Running" else None

    eventually(moved_on, 3 * INTERVAL + 2 * PERIOD + 5, "the live status moving on")
    ns.wait_phase("busy", "Succeeded", 60)
    elapsed = time.monotonic() - started

    # The operator's status writes while it ran: at most one per interval (plus the transitions').
    writes = [w for w in ns.operator_writes() if w.endswith("/fleetdispatches/busy/status")]
    assert len(writes) <= elapsed / INTERVAL + 4, (len(writes), elapsed)
    lease_writes = _lease_writes(cluster, ns.name, "busy-1")
    # The supervisor renews its Lease once per period (a request takes a little time, hence the margin).
    assert elapsed / PERIOD * 0.5 <= lease_writes <= elapsed / PERIOD + 3, (lease_writes, elapsed)


def _lease_writes(cluster: BackgroundCluster, namespace: str, name: str) -> int:
    events, _ = audit_events(cluster.dev.audit_log)
    return sum(
        1
        for event in events
        if event.get("stage") == "ResponseComplete"
        and event.get("verb") in ("create", "patch", "update")
        and (event.get("objectRef") or {}).get("resource") == "leases"
        and (event.get("objectRef") or {}).get("namespace") == namespace
        and (event.get("objectRef") or {}).get("name", name) == name
    )


def _supervisor_of(namespace: str, dispatch: str) -> psutil.Process:
    """The supervisor of `namespace/dispatch`'s pod: a descendant of this process (the node agent runs in
    the test's cluster thread), by its command line."""
    marker = f"{namespace}/{dispatch}"
    for process in psutil.Process(os.getpid()).children(recursive=True):
        try:
            command = process.cmdline()
        except psutil.Error:
            continue
        if "supervise" in command and any(marker == part or part.endswith(f"={marker}") for part in command):
            return process
    raise AssertionError(f"no supervisor process of {marker}")


def test_a_killed_supervisor_ends_the_attempt_as_supervisor_lost(beating: Namespace) -> None:
    ns = beating
    script = 'if [ "$FLEET_ATTEMPT" = 1 ]; then exec sleep 600; fi; echo "second attempt"'
    ns.create("orphan", _session(script, retry={**FAST_RETRY, "maxAttempts": 1}))
    ns.wait_phase("orphan", "Running", 30)
    leases = LEASES.format(ns=ns.name)
    eventually(
        lambda: any(i["metadata"]["name"] == "orphan-1" for i in ns.kube.items(leases)), 10, "the Lease"
    )
    supervisor = eventually(lambda: _supervisor_of(ns.name, "orphan"), 10, "the supervisor's process")
    supervisor.send_signal(signal.SIGKILL)
    killed = time.monotonic()

    def lost() -> dict[str, Any] | None:
        status = ns.status("orphan")
        return status if status.get("attempts") else None

    # Three periods and the tolerance after the last renewal, plus a reconcile and the watch's latency.
    status = eventually(lost, LOST_WITHIN + 5, "the attempt ended as SupervisorLost")
    took = time.monotonic() - killed
    record = status["attempts"][0]
    assert (record["outcome"], record["failureClass"]) == ("SupervisorLost", "Infrastructure"), record
    assert "Lease orphan-1 was last renewed" in record["message"]
    assert f"plus {TOLERANCE:g} s for clock skew" in record["message"]  # the operator's setting
    assert took >= (live.LOST_PERIODS - 1) * PERIOD, took  # not before the Lease went stale
    # An infrastructure failure: the next attempt runs without spending maxAttempts.
    final = ns.wait_phase("orphan", "Succeeded", 40)
    assert (final["failures"], final["infrastructureFailures"]) == (0, 1)


def _forge(
    ns: Namespace, name: str, dispatch: str, *, owner_uid: str | None, attempt: str, holder: str
) -> None:
    """A Lease as an attacker with the heartbeat's Role might write it: stale (renewed an hour ago) and
    with a deadline ten days away, so that, trusted, it would end the attempt or move its deadline."""
    far = protocol.format_time(time.time() + 10 * 86400)
    body: dict[str, Any] = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": name,
            "labels": {DISPATCH_LABEL: dispatch, ATTEMPT_LABEL: attempt},
            "annotations": {"fleet.dispatch.dev/deadline": far, "fleet.dispatch.dev/last-activity": far},
        },
        "spec": {
            "holderIdentity": holder,
            "renewTime": protocol.format_micro_time(time.time() - 3600),
            "leaseDurationSeconds": 3,
        },
    }
    if owner_uid is not None:
        pod = f"{dispatch}-1"
        body["metadata"]["ownerReferences"] = [
            {"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": owner_uid}
        ]
    ns.kube.create(LEASES.format(ns=ns.name), body)


def test_forged_leases_change_nothing(beating: Namespace) -> None:
    ns = beating
    # Each template asks for the service account's token in every container, which turns the heartbeat off
    # for its pod (the session would hold the Lease-writing token): only the forger writes Leases here.
    spec = _session("exec sleep 600")
    spec["template"]["spec"]["automountServiceAccountToken"] = True
    targets = ("no-owner", "wrong-attempt", "wrong-holder")
    for name in targets:
        ns.create(name, spec)
    initial = {name: ns.wait_phase(name, "Running", 30)["deadline"] for name in targets}
    uid = {name: ns.pod(f"{name}-1")["metadata"]["uid"] for name in targets}
    # Named after the pod, with the right labels, but owned by nobody.
    _forge(ns, "no-owner-1", "no-owner", owner_uid=None, attempt="1", holder="no-owner-1")
    # All right but the name.
    _forge(ns, "no-owner-lease", "no-owner", owner_uid=uid["no-owner"], attempt="1", holder="no-owner-1")
    # Owned by the pod, but labelled with another attempt.
    _forge(
        ns,
        "wrong-attempt-1",
        "wrong-attempt",
        owner_uid=uid["wrong-attempt"],
        attempt="2",
        holder="wrong-attempt-1",
    )
    # Held by someone else.
    _forge(
        ns, "wrong-holder-1", "wrong-holder", owner_uid=uid["wrong-holder"], attempt="1", holder="intruder"
    )
    # Longer than a supervisor takes to be found lost, and than the live status takes: nothing happens.
    time.sleep(LOST_WITHIN + 2 * INTERVAL + 2)
    for name in targets:
        status = ns.status(name)
        assert status["phase"] == "Running" and status.get("attempts", []) == [], status
        assert status["deadline"] == initial[name] and "lastActivityTime" not in status, status
        assert ns.pod(f"{name}-1")["metadata"].get("deletionTimestamp") is None


def test_without_the_heartbeat_account_a_namespace_works_as_before(ns: Namespace) -> None:
    # No heartbeat identity in this namespace: the pod is created without the heartbeat (after one refusal).
    timeouts = {
        "deadlineSeconds": 2,
        "maxExtensionSeconds": 60,
        "idleOutputSeconds": 0,
        "killGraceSeconds": 1,
    }
    ns.create("plain", _session(_busy(8), timeouts=timeouts))
    running = ns.wait_phase("plain", "Running", 30)
    pod = ns.pod("plain-1")
    assert pod["spec"].get("serviceAccountName") in (None, "default")
    assert not any(v["name"] == "fleet-token" for v in pod["spec"].get("volumes", []))
    time.sleep(5 * PERIOD)
    during = ns.status("plain")
    assert during["phase"] == "Running"
    assert during["deadline"] == running["deadline"] and "lastActivityTime" not in during
    assert ns.kube.items(LEASES.format(ns=ns.name)) == []
    final = ns.wait_phase("plain", "Succeeded", 40)
    # As before: the supervisor's final report still shows how far the deadline was extended.
    assert _time(final["deadline"]) > _time(running["deadline"])
    refused = [
        e
        for e in audit_events(ns.cluster.dev.audit_log)[0]
        if (e.get("user") or {}).get("username") == OPERATOR_USER
        and (e.get("objectRef") or {}).get("namespace") == ns.name
        and e.get("stage") == "ResponseComplete"
        and (e.get("responseStatus") or {}).get("code") == 403
    ]
    assert len(refused) == 1, json.dumps(refused)[:2000]  # the one create that named the missing account
