"""With the heartbeat setting off, everything works as before the live status (issue [live]).

Its own module, so that its operator is one started without `--heartbeat-service-account` (the module's
`operator` fixture; test_operator_live.py runs one with it). The namespace has the heartbeat's identity all
the same, so the setting is the only difference: no pod runs as that account, no supervisor writes a Lease,
the operator watches none, and the status keeps the initial deadline while the session runs, showing the
supervisor's extended one only from its final report.
"""

from __future__ import annotations

import time

from fleetdispatch.devcluster.stack import OPERATOR_USER, AuditWatch, BackgroundCluster, heartbeat_identity
from fleetdispatch.session import protocol
from operators import Namespace

LEASES = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"


def test_with_the_heartbeat_off_a_running_attempt_shows_its_initial_deadline(
    cluster: BackgroundCluster, ns: Namespace
) -> None:
    cluster.dev.plane.apply(heartbeat_identity(ns.name))
    watches = AuditWatch(cluster.dev.audit_log, OPERATOR_USER)
    busy = 'end=$(( $(date +%s) + 8 )); while [ "$(date +%s)" -lt "$end" ]; do :; done; echo done'
    container = {"name": "session", "image": "busybox", "command": ["sh", "-c", busy]}
    timeouts = {
        "deadlineSeconds": 2,
        "maxExtensionSeconds": 60,
        "idleOutputSeconds": 0,
        "killGraceSeconds": 1,
    }
    spec = {
        "template": {"spec": {"containers": [container]}},
        "activity": {"pollSeconds": 1},
        "timeouts": timeouts,
    }
    ns.create("plain", spec)
    running = ns.wait_phase("plain", "Running", 30)
    pod = ns.pod("plain-1")
    assert pod["spec"].get("serviceAccountName") in (None, "default")
    assert not any(v["name"] == "fleet-token" for v in pod["spec"].get("volumes", []))
    time.sleep(4)
    during = ns.status("plain")
    assert during["phase"] == "Running"
    assert during["deadline"] == running["deadline"] and "lastActivityTime" not in during
    assert ns.kube.items(LEASES.format(ns=ns.name)) == []
    assert "leases" not in watches.open_watches()
    final = ns.wait_phase("plain", "Succeeded", 40)
    # As before: the supervisor's final report shows how far the deadline was extended.
    extended, initial = protocol.parse_time(final["deadline"]), protocol.parse_time(running["deadline"])
    assert extended is not None and initial is not None and extended > initial
