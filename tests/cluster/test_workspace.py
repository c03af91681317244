"""spec.workspace on the dev cluster: the real operator (with the chart's RBAC), real sessions, and claims
provisioned by the dev cluster's default StorageClass (`fleet-local`, devcluster/storage.py) and mounted by
the node agent from their bound volume.

A session writes a file into its workspace and runs out of quota (or is suspended); the resumed attempt
reads it back: its output says what it read, and it fails if the file is not there. The claim goes with
the dispatch when `Delete` (its volume and folder too) and stays when `Retain`. A claim of the name that is
someone else's is never mounted: the dispatch says why and waits.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fleetdispatch.api.names import DISPATCH_LABEL
from fleetdispatch.devcluster import storage
from kube import ApiError
from operators import Namespace, OperatorProcess, dispatch_spec, now_rfc3339
from waiting import eventually

CLAIM_SPEC = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}}}
FAST_RETRY = {"maxAttempts": 1, "backoff": {"baseSeconds": 1, "maxSeconds": 1, "jitterPercent": 0}}
# Attempt 1 writes the note, attempt 2 prints it (and fails without it).
READ_BACK = (
    'if [ "$FLEET_ATTEMPT" = 1 ]; then {first}; fi; '
    'test -f "$WS/note.txt" || {{ echo "no note in $WS"; exit 3; }}; '
    'echo "read back: $(cat "$WS/note.txt")"'
)


def _spec(script: str, *, mount: str = "/workspace", policy: str = "Delete", **env: str) -> dict[str, Any]:
    variables = [{"name": "WS", "value": mount}, *({"name": k, "value": v} for k, v in env.items())]
    session = {"name": "session", "image": "busybox", "command": ["sh", "-c", script], "env": variables}
    return dispatch_spec(
        template={"spec": {"containers": [session]}},
        activity={"pollSeconds": 1},
        retry=FAST_RETRY,
        workspace={
            "mountPath": mount,
            "reclaimPolicy": policy,
            "volumeClaimTemplate": {"metadata": {"labels": {"team": "t"}}, "spec": CLAIM_SPEC},
        },
    )


def _claims(ns: Namespace) -> str:
    return f"/api/v1/namespaces/{ns.name}/persistentvolumeclaims"


def _claim(ns: Namespace, name: str) -> dict[str, Any] | None:
    try:
        return ns.kube.get(f"{_claims(ns)}/{name}")
    except ApiError as error:
        if error.status == 404:
            return None
        raise


def _volume_of(ns: Namespace, claim: dict[str, Any]) -> dict[str, Any] | None:
    uid = claim["metadata"]["uid"]
    volumes = ns.kube.items("/api/v1/persistentvolumes")
    return next((v for v in volumes if (v["spec"].get("claimRef") or {}).get("uid") == uid), None)


def test_the_resumed_attempt_after_a_quota_stop_reads_what_the_first_wrote(ns: Namespace) -> None:
    first = (
        'echo "written by attempt 1" > "$WS/note.txt"; '
        'printf \'{"reason":"QuotaExhausted","resetAt":"%s"}\' "$RESET" > "$FLEET_STATE_DIR/outcome.json"; '
        "exit 75"
    )
    ns.create("quota", _spec(READ_BACK.format(first=first), mount="/home/agent/work", RESET=now_rfc3339(2)))
    status = ns.wait_phase("quota", "Succeeded", 90)
    assert [a["outcome"] for a in status["attempts"]] == ["QuotaExhausted", "Completed"]
    assert status["requeues"] == 1
    assert "read back: written by attempt 1" in ns.logs("quota-2")
    # The claim was created once, before the first attempt; the second reused it.
    posts = f"POST /api/v1/namespaces/{ns.name}/persistentvolumeclaims"
    assert ns.operator_writes().count(posts) == 1
    # The claim at the spec's mountPath, in the session container only (the earlier attempt's pod may be
    # deleted by now: what it wrote is what was read back).
    spec = ns.pod("quota-2")["spec"]
    claims = [v for v in spec["volumes"] if "persistentVolumeClaim" in v]
    assert [v["persistentVolumeClaim"]["claimName"] for v in claims] == ["quota-workspace"]
    [session] = spec["containers"]
    assert {"name": "fleet-workspace", "mountPath": "/home/agent/work"} in session["volumeMounts"]
    for sidecar in spec["initContainers"]:
        assert all(m["name"] != "fleet-workspace" for m in sidecar.get("volumeMounts") or [])


def test_the_resumed_attempt_after_a_suspension_reads_what_the_first_wrote(ns: Namespace) -> None:
    first = 'echo "written before the suspension" > "$WS/note.txt"; exec sleep 600'
    ns.create("held", _spec(READ_BACK.format(first=first)))
    ns.wait_phase("held", "Running", 60)
    ns.patch_spec("held", {"suspend": True})
    ns.wait_phase("held", "Suspended")
    eventually(lambda: "held-1" not in [p["metadata"]["name"] for p in ns.pods()], 30, "held-1 deleted")
    ns.patch_spec("held", {"suspend": False})
    status = ns.wait_phase("held", "Succeeded", 60)
    assert [a["outcome"] for a in status["attempts"]] == ["Suspended", "Completed"]
    assert "read back: written before the suspension" in ns.logs("held-2")


def test_a_delete_workspace_goes_with_its_dispatch(ns: Namespace) -> None:
    ns.create("gone", _spec('echo kept > "$WS/note.txt"'))
    ns.wait_phase("gone", "Succeeded", 60)
    claim = _claim(ns, "gone-workspace")
    assert claim is not None
    dispatch = ns.dispatch("gone")
    [owner] = claim["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == (
        "FleetDispatch",
        "gone",
        dispatch["metadata"]["uid"],
    )
    assert owner["controller"] is True
    assert claim["metadata"]["labels"] == {"team": "t", DISPATCH_LABEL: "gone"}
    assert claim["spec"]["storageClassName"] == storage.CLASS_NAME  # the dev cluster's default class
    assert claim["status"]["phase"] == "Bound"
    volume = _volume_of(ns, claim)
    assert volume is not None
    folder = Path(volume["spec"]["hostPath"]["path"])
    assert (folder / "note.txt").read_text() == "kept\n"

    ns.kube.delete(f"{ns.path}/gone")
    eventually(lambda: _claim(ns, "gone-workspace") is None, 60, "the claim garbage-collected")
    eventually(lambda: _volume_of(ns, claim) is None, 30, "its volume reclaimed")
    assert not folder.exists()


def test_a_retain_workspace_stays_after_its_dispatch(ns: Namespace) -> None:
    ns.create("kept", _spec('echo kept > "$WS/note.txt"', policy="Retain"))
    ns.wait_phase("kept", "Succeeded", 60)
    ns.kube.delete(f"{ns.path}/kept")
    eventually(lambda: not ns.pods(), 60, "the dispatch's pods garbage-collected")
    eventually(lambda: not ns.kube.items(ns.path), 30, "the dispatch gone")
    claim = _claim(ns, "kept-workspace")
    assert claim is not None and not claim["metadata"].get("deletionTimestamp")
    assert "ownerReferences" not in claim["metadata"]
    assert claim["metadata"]["labels"][DISPATCH_LABEL] == "kept"
    volume = _volume_of(ns, claim)
    assert volume is not None
    assert (Path(volume["spec"]["hostPath"]["path"]) / "note.txt").read_text() == "kept\n"
    # Deleting it by hand reclaims it as any claim of the class.
    ns.kube.delete(f"{_claims(ns)}/kept-workspace")
    eventually(lambda: _volume_of(ns, claim) is None, 30, "its volume reclaimed")


def test_a_claim_of_the_name_that_is_someone_elses_is_never_mounted(ns: Namespace) -> None:
    foreign = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "taken-workspace"}}
    ns.kube.create(_claims(ns), {**foreign, "spec": CLAIM_SPEC})
    ns.create("taken", _spec('echo mine > "$WS/note.txt"'))

    def refused() -> dict[str, Any] | None:
        status = ns.status("taken")
        return status if status.get("reason") == "FailedCreate" else None

    status = eventually(refused, 30, "the dispatch says why it waits")
    assert (
        "PersistentVolumeClaim taken-workspace exists and is not this dispatch's workspace"
        in status["message"]
    )
    assert status["phase"] == "Pending"
    condition = ns.condition("taken", "PodCreateFailed")
    assert condition is not None and condition["status"] == "True"
    assert "taken-workspace" in condition["message"]
    assert not ns.pods()
    assert any(reason == "FailedCreate" and "taken-workspace" in message for reason, message in ns.events())
    # No crash loop: the claim is asked for again with the key's growing backoff (1 s, 2 s, 4 s, ...), so two
    # more refusals take at least the two backoffs between them (a retry storm would take milliseconds).
    posts = f"POST /api/v1/namespaces/{ns.name}/persistentvolumeclaims"
    before, started = ns.operator_writes().count(posts), time.monotonic()
    eventually(lambda: ns.operator_writes().count(posts) - before >= 2, 20, "two more refused claims")
    assert time.monotonic() - started >= 1.5
    assert not ns.pods()
    # Once that claim is gone, the dispatch creates its own and runs.
    ns.kube.delete(f"{_claims(ns)}/taken-workspace")
    ns.wait_phase("taken", "Succeeded", 90)
    claim = _claim(ns, "taken-workspace")
    assert claim is not None and claim["metadata"]["ownerReferences"][0]["name"] == "taken"


def test_a_retained_claim_of_the_name_is_taken_up_by_a_new_dispatch(ns: Namespace) -> None:
    # What a Retain workspace left behind (or a claim the operator created before a restart): found by its
    # name and label, adopted (AlreadyExists), mounted with its files.
    labels = {DISPATCH_LABEL: "again"}
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "again-workspace"}}
    ns.kube.create(
        _claims(ns), {**claim, "metadata": {**claim["metadata"], "labels": labels}, "spec": CLAIM_SPEC}
    )
    eventually(
        lambda: (_claim(ns, "again-workspace") or {}).get("status", {}).get("phase") == "Bound", 30, "bound"
    )
    volume = _volume_of(ns, _claim(ns, "again-workspace") or {})
    assert volume is not None
    (Path(volume["spec"]["hostPath"]["path"]) / "note.txt").write_text("left by an earlier dispatch\n")
    ns.create("again", _spec(READ_BACK.format(first=":"), policy="Retain"))
    ns.wait_phase("again", "Succeeded", 60)
    assert "read back: left by an earlier dispatch" in ns.logs("again-1")
    assert "ownerReferences" not in (_claim(ns, "again-workspace") or {})["metadata"]


def test_an_operator_restarted_between_attempts_adopts_the_claim_it_created(
    ns: Namespace, operator: OperatorProcess
) -> None:
    first = (
        'echo "written before the restart" > "$WS/note.txt"; '
        'printf \'{"reason":"QuotaExhausted","resetAt":"%s"}\' "$RESET" > "$FLEET_STATE_DIR/outcome.json"; '
        "exit 75"
    )
    ns.create("restart", _spec(READ_BACK.format(first=first), RESET=now_rfc3339(8)))
    ns.wait_phase("restart", "Requeued", 60)
    operator.kill()
    operator.start()
    eventually(operator.watching, 30, "the restarted operator watching")
    # The new process knows nothing of the claim: its create answers AlreadyExists, and it is its own.
    ns.wait_phase("restart", "Succeeded", 60)
    assert "read back: written before the restart" in ns.logs("restart-2")
    [claim] = ns.kube.items(_claims(ns))
    assert claim["metadata"]["ownerReferences"][0]["uid"] == ns.dispatch("restart")["metadata"]["uid"]
    # One create per operator process (the first made it, the second was told it exists), not per attempt.
    posts = f"POST /api/v1/namespaces/{ns.name}/persistentvolumeclaims"
    eventually(lambda: ns.operator_writes().count(posts) == 2, 10, "two creates of the claim")
