"""The workspace claim of a dispatch (`spec.workspace`): what the operator creates, and whether a claim is it.

`build_claim(ref, workspace)` is the PersistentVolumeClaim `<dispatch>-workspace`, a pure function of the
dispatch and its spec: the template's labels and annotations, the dispatch label over them, and the
template's claim spec as written. With `reclaimPolicy: Delete` the claim carries a controller owner
reference to the dispatch, so the garbage collector deletes it with the dispatch; with `Retain` it has no
owner and outlives the dispatch, found again by its label.

`foreign(claim, ref, workspace)` says why an existing claim of that name is not this dispatch's workspace
(None when it is): the operator adopts a claim it created before (a lost response, a restart), never
someone else's, because mounting it would hand another user's files to this session.

The pod side (the volume and the session container's mount) is `podspec`'s. Deliberately not here: any
I/O, and waiting for the claim to be bound (the scheduler holds the pod until it is).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fleetdispatch.api import models, names
from fleetdispatch.core.podspec import DispatchRef


def claim_name(dispatch_name: str) -> str:
    """`<dispatch>-workspace`: a dispatch name has at most 63 characters, so this fits a claim name."""
    return dispatch_name + names.WORKSPACE_SUFFIX


def build_claim(ref: DispatchRef, workspace: models.Workspace) -> dict[str, Any]:
    """The claim to create for the dispatch `ref`; nothing of `workspace` is mutated."""
    template = workspace.volume_claim_template
    metadata: dict[str, Any] = {
        "name": claim_name(ref.name),
        "namespace": ref.namespace,
        "labels": {**template.metadata.labels, names.DISPATCH_LABEL: ref.name},
    }
    if template.metadata.annotations:
        metadata["annotations"] = dict(template.metadata.annotations)
    if workspace.reclaim_policy == "Delete":
        metadata["ownerReferences"] = [ref.owner_reference()]
    spec = template.spec.model_dump(by_alias=True, exclude_none=True, mode="json", warnings=False)
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": metadata, "spec": spec}


def foreign(claim: Mapping[str, Any], ref: DispatchRef, workspace: models.Workspace) -> str | None:
    """Why `claim` (found under the workspace's name) is not this dispatch's workspace, or None when it is.

    Ours with Delete: its controller is this dispatch (this uid). Ours with Retain: no controller, and the
    dispatch label names this dispatch (a Retain claim outlives its dispatch, so a dispatch created again
    under the same name takes up its predecessor's workspace, as a StatefulSet's pod takes up its claim).
    """
    metadata: Mapping[str, Any] = claim.get("metadata") or {}
    name = metadata.get("name", claim_name(ref.name))
    controller = next((o for o in metadata.get("ownerReferences") or [] if o.get("controller") is True), None)
    label = (metadata.get("labels") or {}).get(names.DISPATCH_LABEL)
    if metadata.get("deletionTimestamp"):
        # A pod cannot be scheduled with a claim being deleted; once it is gone, a new one is created.
        return f"the PersistentVolumeClaim {name} is being deleted: waiting for it to go"
    if workspace.reclaim_policy == "Delete":
        if controller is not None and controller.get("uid") == ref.uid:
            return None
        if controller is not None and controller.get("kind") == "FleetDispatch" and label == ref.name:
            return (
                f"the PersistentVolumeClaim {name} still belongs to an earlier FleetDispatch of the same "
                "name (being deleted with it): waiting for it to go"
            )
    elif controller is None and label == ref.name:
        return None
    owner = (
        f"it is controlled by {controller.get('kind')} {controller.get('name')}"
        if controller is not None
        else f"its {names.DISPATCH_LABEL} label is {label!r}"
        if label is not None
        else "it was not created by fleet-dispatch for this dispatch"
    )
    return (
        f"the PersistentVolumeClaim {name} exists and is not this dispatch's workspace ({owner}): "
        "delete or rename that claim, or give the dispatch another name"
    )
