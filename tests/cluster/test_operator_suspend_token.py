"""Suspend keeps the resume token: the real operator, a real session and its real supervisor. The session
writes `$FLEET_STATE_DIR/resume-token`; the dispatch is suspended (its pod deleted, the supervisor TERMed,
which reports the token in its termination message) and then resumed; the next attempt gets that token.

What this depends on: the operator must see the suspended pod's final status (the supervisor's report) before
the node agent removes the pod, which it does right after writing that status.
"""

from __future__ import annotations

from operators import Namespace
from waiting import eventually

FAST_RETRY = {"maxAttempts": 2, "backoff": {"baseSeconds": 1, "maxSeconds": 1, "jitterPercent": 0}}


def test_the_token_written_during_a_suspended_attempt_reaches_the_resumed_one(ns: Namespace) -> None:
    script = (
        'if [ "$FLEET_RESUME" = 1 ]; then echo "resumed with $FLEET_RESUME_TOKEN"; exit 0; fi; '
        'echo "written-while-suspended" > "$FLEET_STATE_DIR/resume-token"; exec sleep 600'
    )
    container = {"name": "session", "image": "busybox", "command": ["sh", "-c", script]}
    spec = {
        "template": {"spec": {"containers": [container]}},
        "activity": {"pollSeconds": 1},
        "retry": FAST_RETRY,
    }
    ns.create("held", spec)
    ns.wait_phase("held", "Running")
    ns.patch_spec("held", {"suspend": True})
    ns.wait_phase("held", "Suspended")
    names = lambda: [p["metadata"]["name"] for p in ns.pods()]  # noqa: E731
    eventually(lambda: "held-1" not in names(), 20, "the suspended attempt's pod deleted")
    eventually(
        lambda: ns.status("held").get("resumeToken") == "written-while-suspended",
        30,
        "the supervisor's reported token in the suspended dispatch's status",
    )
    ns.patch_spec("held", {"suspend": False})
    status = ns.wait_phase("held", "Succeeded", 30)
    assert [a["outcome"] for a in status["attempts"]] == ["Suspended", "Completed"]
    env = {e["name"]: e.get("value", "") for e in ns.pod("held-2")["spec"]["containers"][0]["env"]}
    assert env["FLEET_RESUME"] == "1"
    assert env["FLEET_RESUME_TOKEN"] == "written-while-suspended"
