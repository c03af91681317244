"""The dev cluster's provisioner decisions without a cluster: which claims get a volume, and the volume
(tests/cluster/test_workspace.py runs it with kube-controller-manager binding what it provisions)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fleetdispatch.devcluster import storage


def claim(**spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "w", "namespace": "team", "uid": "u-1"},
        "spec": {
            "storageClassName": storage.CLASS_NAME,
            "accessModes": ["ReadWriteMany"],
            "resources": {"requests": {"storage": "64Mi"}},
            **spec,
        },
        "status": {"phase": "Pending"},
    }


def test_the_class_is_the_clusters_default_and_binds_at_once() -> None:
    annotations = storage.STORAGE_CLASS["metadata"]["annotations"]
    assert annotations == {"storageclass.kubernetes.io/is-default-class": "true"}
    assert storage.STORAGE_CLASS["volumeBindingMode"] == "Immediate"
    assert storage.STORAGE_CLASS["provisioner"] == storage.PROVISIONER


@pytest.mark.parametrize(
    ("changed", "wanted"),
    [
        ({}, True),
        ({"spec": {"storageClassName": "other"}}, False),
        ({"spec": {"volumeName": "pv-1"}}, False),
        ({"spec": {"volumeMode": "Block"}}, False),
        ({"status": {"phase": "Bound"}}, False),
        ({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}, False),
    ],
)
def test_only_a_pending_claim_of_the_class_wants_a_volume(changed: dict[str, Any], wanted: bool) -> None:
    item = claim()
    for part, fields in changed.items():
        item[part].update(fields)
    assert storage.wants_volume(item) is wanted


def test_the_volume_is_pre_bound_to_its_claim_on_its_folder(tmp_path: Path) -> None:
    folder = tmp_path / "pvc-u-1"
    volume = storage.volume_for(claim(), folder, "Delete")
    assert volume["metadata"] == {
        "name": "pvc-u-1",
        "annotations": {storage.PROVISIONED_BY: storage.PROVISIONER},
    }
    assert volume["spec"] == {
        "capacity": {"storage": "64Mi"},
        "accessModes": ["ReadWriteMany"],
        "persistentVolumeReclaimPolicy": "Delete",
        "storageClassName": storage.CLASS_NAME,
        "volumeMode": "Filesystem",
        "hostPath": {"path": str(folder), "type": "Directory"},
        "claimRef": {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "namespace": "team",
            "name": "w",
            "uid": "u-1",
        },
    }
