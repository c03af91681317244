"""Storage for the dev cluster: the default StorageClass ``fleet-local`` and its provisioner.

:data:`STORAGE_CLASS` is a StorageClass marked as the cluster's default, whose provisioner is
:data:`PROVISIONER` (an external one, as far as kube-controller-manager knows), ``Immediate`` binding and
the ``Delete`` reclaim policy. :class:`LocalProvisioner` does what an external provisioner does for it,
through the API server as cluster admin:

* **Provisioning**: for each claim of the class that is ``Pending`` without a volume, a folder
  ``<root>/pvc-<claim uid>`` (mode 0777: any container user may write, as an ``emptyDir``) and a
  PersistentVolume of that name with a ``hostPath`` source on it, the claim's size and access modes, and a
  ``claimRef`` naming the claim (uid included). kube-controller-manager's PV controller then binds the
  two, as it binds an external provisioner's volumes; the node agent mounts the folder (claim -> bound
  volume -> its path) where a pod asks for the claim.
* **Reclaiming**: a volume it provisioned that is ``Released`` (its claim deleted) with the ``Delete``
  policy has its folder removed and is deleted. ``Retain`` volumes are left alone, as everywhere.

It is level-triggered: each round compares all claims with all volumes (two lists), after any change a
watch on either reports, and every :data:`RESYNC_SECONDS` regardless. A round that fails is retried.

Deliberately not done: capacity (the folder is not limited to the claim's size), ``WaitForFirstConsumer``
(one node), volume expansion, snapshots, ``dataSource``, block volumes (the claim stays ``Pending``). The
folders live in the dev cluster's work folder: a cluster restarted on a kept ``--data-dir`` (etcd) has its
volumes' objects but not their files, and the node agent says so instead of mounting an empty folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

from fleetdispatch.api import names
from fleetdispatch.client.kubeapi import ApiError, KubeApi

logger = logging.getLogger("fleetdispatch.devcluster.storage")

Object = dict[str, Any]

CLASS_NAME = "fleet-local"
PROVISIONER = "fleet.dispatch.dev/local"
DEFAULT_CLASS_ANNOTATION = "storageclass.kubernetes.io/is-default-class"
PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"
RESYNC_SECONDS = 10.0
WATCH_SECONDS = 300

STORAGE_CLASS: Object = {
    "apiVersion": "storage.k8s.io/v1",
    "kind": "StorageClass",
    "metadata": {"name": CLASS_NAME, "annotations": {DEFAULT_CLASS_ANNOTATION: "true"}},
    "provisioner": PROVISIONER,
    "reclaimPolicy": "Delete",
    "volumeBindingMode": "Immediate",
}


def volume_for(claim: Mapping[str, Any], folder: Path, reclaim_policy: str) -> Object:
    """The PersistentVolume provisioned for `claim`, on `folder`, pre-bound to it."""
    metadata, spec = claim["metadata"], claim.get("spec") or {}
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": folder.name, "annotations": {PROVISIONED_BY: PROVISIONER}},
        "spec": {
            "capacity": {
                "storage": ((spec.get("resources") or {}).get("requests") or {}).get("storage", "1Gi")
            },
            "accessModes": list(spec.get("accessModes") or ["ReadWriteOnce"]),
            "persistentVolumeReclaimPolicy": reclaim_policy,
            "storageClassName": CLASS_NAME,
            "volumeMode": "Filesystem",
            "hostPath": {"path": str(folder), "type": "Directory"},
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": metadata["namespace"],
                "name": metadata["name"],
                "uid": metadata["uid"],
            },
        },
    }


def wants_volume(claim: Mapping[str, Any]) -> bool:
    """A claim of the class, not being deleted, still waiting for a volume, on the filesystem."""
    spec, status = claim.get("spec") or {}, claim.get("status") or {}
    return (
        spec.get("storageClassName") == CLASS_NAME
        and not spec.get("volumeName")
        and spec.get("volumeMode", "Filesystem") == "Filesystem"
        and status.get("phase", "Pending") == "Pending"
        and not claim["metadata"].get("deletionTimestamp")
    )


class LocalProvisioner:
    """Provisions and reclaims the volumes of :data:`STORAGE_CLASS` under `root`, until :meth:`run` is
    cancelled."""

    def __init__(self, api: KubeApi, root: Path, *, retry_seconds: float = 1.0) -> None:
        self.api = api
        self.root = Path(root)
        self.retry_seconds = retry_seconds
        self._changed = asyncio.Event()

    async def run(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        watches = [
            asyncio.create_task(
                self._watch(names.PERSISTENT_VOLUME_CLAIMS.path()), name="fleet-storage-pvcs"
            ),
            asyncio.create_task(self._watch(names.PERSISTENT_VOLUMES.path()), name="fleet-storage-pvs"),
        ]
        try:
            while True:
                self._changed.clear()
                try:
                    await self.sync()
                except (TimeoutError, ApiError, OSError, aiohttp.ClientError) as error:
                    logger.warning("dev storage: a round failed, retrying: %s", error)
                    await asyncio.sleep(self.retry_seconds)
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), RESYNC_SECONDS)
        finally:
            for task in watches:
                task.cancel()
            await asyncio.gather(*watches, return_exceptions=True)

    async def sync(self) -> None:
        """One round: a volume for each claim that wants one, and Released Delete volumes reclaimed."""
        claims = (await self.api.request("GET", names.PERSISTENT_VOLUME_CLAIMS.path())).get("items") or []
        volumes = (await self.api.request("GET", names.PERSISTENT_VOLUMES.path())).get("items") or []
        ours = [
            v for v in volumes if (v["metadata"].get("annotations") or {}).get(PROVISIONED_BY) == PROVISIONER
        ]
        provisioned = {v["metadata"]["name"] for v in volumes}
        reclaim_policy = str(STORAGE_CLASS["reclaimPolicy"])
        for claim in claims:
            folder = self.root / f"pvc-{claim['metadata']['uid']}"
            if not wants_volume(claim) or folder.name in provisioned:
                continue
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o777)  # any container user may write, as in an emptyDir
            try:
                await self.api.request(
                    "POST", names.PERSISTENT_VOLUMES.path(), volume_for(claim, folder, reclaim_policy)
                )
            except ApiError as error:
                if error.status != 409:
                    raise
            logger.info(
                "dev storage: provisioned %s for %s/%s",
                folder.name,
                claim["metadata"]["namespace"],
                claim["metadata"]["name"],
            )
        for volume in ours:
            spec, status = volume.get("spec") or {}, volume.get("status") or {}
            if (
                status.get("phase") not in ("Released", "Failed")
                or spec.get("persistentVolumeReclaimPolicy") != "Delete"
            ):
                continue
            path = Path(str((spec.get("hostPath") or {}).get("path") or ""))
            if path.parent == self.root:  # never anything outside the provisioner's own folder
                await asyncio.get_running_loop().run_in_executor(None, shutil.rmtree, path, True)
            try:
                await self.api.request(
                    "DELETE", names.PERSISTENT_VOLUMES.path(name=volume["metadata"]["name"])
                )
            except ApiError as error:
                if error.status != 404:
                    raise
            logger.info("dev storage: reclaimed %s", volume["metadata"]["name"])

    async def _watch(self, path: str) -> None:
        """Set `_changed` on every event of the collection at `path`, for ever (resumed after errors)."""
        while True:
            try:
                listing = await self.api.request("GET", path, params={"limit": "1"})
                params = {
                    "watch": "1",
                    "resourceVersion": str(listing["metadata"]["resourceVersion"]),
                    "allowWatchBookmarks": "true",
                    "timeoutSeconds": str(WATCH_SECONDS),
                }
                async for event in self.api.watch(path, params):
                    if event.get("type") == "ERROR":
                        break
                    if event.get("type") != "BOOKMARK":
                        self._changed.set()
            except (TimeoutError, ApiError, OSError, ValueError, aiohttp.ClientError) as error:
                logger.debug("dev storage: watch of %s failed, resuming: %s", path, error)
                await asyncio.sleep(self.retry_seconds)
            self._changed.set()  # something may have been missed between two watches
